"""The CPU CUDA-semantics runtime reports what a GPU would reject or corrupt (csrc/cudasim/selftest.cpp: one kernel
per broken rule; "correct" breaks none)."""
from __future__ import annotations

import pytest


def test_correct_kernel_passes(cudasim):
    cudasim._selftest("correct")  # also checks the block sums it computed


@pytest.mark.parametrize(
    "case, match",
    [
        ("block_too_large", r"invalid block \(2048,1,1\).*cudaErrorInvalidConfiguration"),
        ("grid_too_large", r"invalid grid \(1,70000,1\)"),
        ("divergent_syncthreads", r"__syncthreads reached by some threads only: thread 0 passed 0, thread \d+ passed 1"),
        ("shuffle_exited_lane", r"exited while other lanes of its warp wait in a shuffle"),
        ("shuffle_absent_lane", r"names lanes that do not exist \(this warp has 0xffff"),
        ("device_check", r"device-side check failed: selftest: thread 5 has a bad value \(row 5\)"),
    ],
)
def test_broken_rule_is_reported(cudasim, case, match):
    with pytest.raises(RuntimeError, match=match):
        cudasim._selftest(case)


def test_deadlock_is_reported(cudasim, monkeypatch):
    monkeypatch.setenv("CUDASIM_TIMEOUT_S", "1")
    with pytest.raises(RuntimeError, match=r"timed out \(deadlock"):
        cudasim._selftest("deadlock")
