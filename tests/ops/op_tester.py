"""``OpTester``: the shared base class of the native-op tests (after torchvision's ``RoIOpTester``).

A subclass describes one op with three methods and inherits the generic tests:

* ``fn(*args, **kwargs)``: the public wrapper under test, e.g. ``relground.ops.roi_align_avg``.
* ``reference_fn(*args, **kwargs)``: an independent oracle taking the same arguments (a float64
  Python loop, torchvision, ...). It returns the expected output(s); the comparison casts them to
  the dtype of the actual output.
* ``sample_inputs(device, dtype)``: yields ``SampleInput`` objects, small and varied (edge cases too).

Class attributes:

* ``dtypes``: the dtypes the generic tests run over (parametrised as ``dtype``); default fp32, fp64.
* ``op``: the dispatcher overload checked by ``torch.library.opcheck``
  (e.g. ``torch.ops.relground.roi_align_avg.default``); ``None`` skips ``test_opcheck``.
* ``opcheck_dtypes``: dtypes ``test_opcheck`` runs over (default fp32, fp64; fp64 makes the
  autograd check numerically tight).

Override ``op_inputs(sample)`` when the wrapper's arguments differ from the op's schema.

Generic tests (each parametrised over ``device`` = cpu / cuda and ``dtype``):

* ``test_matches_reference``: ``fn`` vs ``reference_fn`` on every sample, with the tolerance table of
  ``tests/utils.py`` for floating outputs and exact equality for integer/bool outputs.
* ``test_opcheck``: ``torch.library.opcheck`` (schema, fake tensor, autograd registration, AOT
  dispatch) on every sample, when the native extension is built.

Example::

    class TestMyOp(OpTester):
        op = torch.ops.relground.my_op.default if relground.HAS_OPS else None

        def fn(self, x, k):
            return relground.ops.my_op(x, k)

        def reference_fn(self, x, k):
            return my_float64_loop(x, k)

        def sample_inputs(self, device, dtype):
            yield SampleInput((torch.rand(3, 4, device=device, dtype=dtype), 2), name="small")
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import relground
from tests.utils import TOLERANCES, cpu_and_cuda


@dataclasses.dataclass
class SampleInput:
    """One call of the op: positional ``args``, keyword ``kwargs`` and a ``name`` used in failure messages."""

    args: tuple
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str = ""


def assert_outputs_close(actual: Any, expected: Any, msg: str = "") -> None:
    """Compares a tensor or a tuple/list of tensors; tolerance from ``TOLERANCES`` by the actual dtype.

    Floating outputs use the ``(atol, rtol)`` of their dtype; integer and bool outputs must match exactly.
    """
    if isinstance(actual, (tuple, list)):
        assert isinstance(expected, (tuple, list)) and len(actual) == len(expected), msg
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_outputs_close(a, e, f"{msg} [output {i}]")
        return
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    expected = expected.to(device=actual.device, dtype=actual.dtype)
    if actual.dtype.is_floating_point:
        atol, rtol = TOLERANCES[actual.dtype]
    else:
        atol, rtol = 0, 0
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{msg}: {m}")


class OpTester:
    """Base class for ``tests/ops/test_<op>.py``; see the module docstring. Not collected itself."""

    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    opcheck_dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
    op: Any = None

    # --- to be provided by the subclass ------------------------------------------------------------
    def fn(self, *args, **kwargs):
        raise NotImplementedError

    def reference_fn(self, *args, **kwargs):
        raise NotImplementedError

    def sample_inputs(self, device: str, dtype: torch.dtype) -> Iterator[SampleInput]:
        raise NotImplementedError

    def op_inputs(self, sample: SampleInput) -> tuple[tuple, dict[str, Any]]:
        """Maps a sample to the ``(args, kwargs)`` of ``self.op``; default: the sample unchanged."""
        return sample.args, sample.kwargs

    # --- parametrisation -----------------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc):
        # Class-level hook (pytest calls it for methods of this class and its subclasses): lets each
        # subclass choose its own dtypes without repeating the parametrize decorators.
        if "dtype" in metafunc.fixturenames and not _already_parametrized(metafunc, "dtype"):
            dtypes = self.opcheck_dtypes if metafunc.function.__name__ == "test_opcheck" else self.dtypes
            metafunc.parametrize("dtype", dtypes, ids=[str(d).removeprefix("torch.") for d in dtypes])

    # --- generic tests ------------------------------------------------------------------------------
    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_matches_reference(self, device, dtype):
        samples = list(self.sample_inputs(device, dtype))
        assert samples, "sample_inputs yielded nothing"
        for sample in samples:
            actual = self.fn(*sample.args, **sample.kwargs)
            expected = self.reference_fn(*sample.args, **sample.kwargs)
            assert_outputs_close(actual, expected, f"sample {sample.name!r}")

    @pytest.mark.parametrize("device", cpu_and_cuda())
    def test_opcheck(self, device, dtype):
        if self.op is None or not relground.HAS_OPS:
            pytest.skip("native extension relground._C not built")
        for sample in self.sample_inputs(device, dtype):
            args, kwargs = self.op_inputs(sample)
            torch.library.opcheck(self.op, args, kwargs)


def _already_parametrized(metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0]
        argnames = [a.strip() for a in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
        if name in argnames:
            return True
    return False
