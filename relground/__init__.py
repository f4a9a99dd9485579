"""relground: Relation-aware Instance Refinement (ReIR) for weakly supervised visual grounding.

The native ops live in the extension ``relground._C`` and are reached through the PyTorch
dispatcher as ``torch.ops.relground.<op>``; ``relground.ops`` wraps them with documented Python
functions that fall back to pure-PyTorch references when the extension is missing.
"""
from __future__ import annotations

__version__ = "0.1.0"

from relground.extension import HAS_OPS, build_info
from relground import ops  # noqa: F401


def __getattr__(name: str):
    # Grounder pulls in the model, data and language layers: import it only when asked for.
    if name == "Grounder":
        from relground.api import Grounder

        return Grounder
    raise AttributeError(f"module 'relground' has no attribute {name!r}")


__all__ = ["HAS_OPS", "Grounder", "build_info", "ops", "__version__"]
