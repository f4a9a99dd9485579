"""relground: Relation-aware Instance Refinement (ReIR) for weakly supervised visual grounding.

The native ops live in the extension ``relground._C`` and are reached through the PyTorch
dispatcher as ``torch.ops.relground.<op>``; ``relground.ops`` wraps them with documented Python
functions that fall back to pure-PyTorch references when the extension is missing.
"""
from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch / libc10 before the extension needs them)

__version__ = "0.1.0"

try:  # the extension registers its ops with the dispatcher on import
    from relground import _C  # noqa: F401

    HAS_OPS = True
    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _C = None
    HAS_OPS = False
    _IMPORT_ERROR = exc
    warnings.warn(
        f"relground._C could not be imported ({exc}); relground.ops falls back to the slow "
        "pure-PyTorch references. Rebuild with `pip install -e . --no-build-isolation`.",
        RuntimeWarning,
        stacklevel=2,
    )


def build_info() -> dict:
    """How ``relground._C`` was built.

    Returns:
        dict with ``cuda_compiled`` (bool), ``cuda_arch_list`` (str, e.g. ``"9.0+PTX"``),
        ``torch_version`` (the torch the extension was compiled against), ``openmp`` and
        ``cuda_runtime_version``.

    Raises:
        RuntimeError: the extension is not built.
    """
    if _C is None:
        raise RuntimeError(f"relground._C is not available: {_IMPORT_ERROR}")
    return dict(_C.build_info())


from relground import ops  # noqa: E402,F401



def __getattr__(name: str):
    # Grounder pulls in the model, data and language layers: import it only when asked for.
    if name == "Grounder":
        from relground.api import Grounder

        return Grounder
    raise AttributeError(f"module 'relground' has no attribute {name!r}")


__all__ = ["HAS_OPS", "Grounder", "build_info", "ops", "__version__"]
