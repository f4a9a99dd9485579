"""``hypothesis`` when it is installed; otherwise stand-ins under which only the property tests skip.

The GPU machine has no hypothesis: importing it at module level made pytest collect none of a module's CUDA tests.
Usage in a test module: ``from tests.ops._hypothesis import HealthCheck, given, settings, st``.
"""
from __future__ import annotations

import functools

import pytest

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover - exercised where hypothesis is absent
    HAVE_HYPOTHESIS = False

    class _Anything:
        """Absorbs ``st.integers(0, 5)``, ``st.sampled_from(...)``, ``HealthCheck.too_slow``, ``@st.composite``."""

        def __getattr__(self, name: str) -> "_Anything":
            return self

        def __call__(self, *args, **kwargs) -> "_Anything":
            return self

        def __iter__(self):
            return iter(())

    st = _Anything()
    HealthCheck = _Anything()

    def settings(*args, **kwargs):
        return lambda test: test

    def given(*args, **kwargs):
        def decorate(test):
            @functools.wraps(test)
            @pytest.mark.skip(reason="needs hypothesis (not installed)")
            def skipped(*a, **k):
                pass

            del skipped.__wrapped__  # pytest must not read the original's arguments as fixtures
            return skipped

        return decorate

__all__ = ["HAVE_HYPOTHESIS", "HealthCheck", "given", "settings", "st"]
