"""Loads the native extension ``relground._C``, checks that it fits the running torch, and says whether
its ops are there.

The ops import ``HAS_OPS`` from here rather than from the package root, so that ``relground.ops`` stands
on this module alone (the root imports ``ops`` and the API on top of it). Only torch and the standard
library are imported.

What happens on import (docs/install.md, "When the extension does not fit the torch"):

* ``relground._C`` loads and was built against this torch (same major.minor; CUDA kernels only with a
  CUDA torch of the same CUDA major version): ``HAS_OPS = True``.
* ``relground._C`` was never built (no such module, e.g. a bare source checkout): a ``RuntimeWarning``
  and the pure-PyTorch references (``HAS_OPS = False``), as before.
* ``relground._C`` exists but was built for another torch or CUDA, or fails to load (an undefined
  symbol: the C++ ABI of another torch): ``ImportError`` naming both versions and the rebuild command.
  ``RELGROUND_ALLOW_FALLBACK=1`` turns that error into a ``RuntimeWarning`` and the slow references.
* ``relground._C`` has CUDA kernels but none for a visible card (its ``cuda_arch_list``): when CUDA starts (the
  first tensor moved to a GPU), a ``RuntimeError`` naming the card, the compiled code and the rebuild command
  (registered by ``relground.ops``, relground/ops/_cuda_arch.py).
"""
from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import torch  # loads libtorch / libc10 before the extension needs them

FALLBACK_ENV = "RELGROUND_ALLOW_FALLBACK"
REBUILD_HINT = (
    "Rebuild relground against the torch you run, from the relground checkout:\n"
    "    pip install --no-build-isolation -e .        (or: python setup.py build_ext --inplace)\n"
    "or install a relground wheel built for this torch (local version +pt<major><minor><cu<ver>|cpu>, "
    "docs/install.md)."
)

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def _parse_version(version: Any) -> tuple[int, int, int] | None:
    """``"2.14.1+cu130"`` -> ``(2, 14, 1)``; None when it is not a version."""
    match = _VERSION_RE.match(str(version)) if version is not None else None
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def _cuda_major_minor(version: Any) -> tuple[int, int] | None:
    """CUDA version as ``(major, minor)``: from ``CUDART_VERSION`` (13000), or a string like ``"13.0"``."""
    if version is None:
        return None
    if isinstance(version, int):
        return version // 1000, (version % 1000) // 10
    parsed = _parse_version(version)
    return None if parsed is None else parsed[:2]


def _describe(torch_version: Any, cuda: tuple[int, int] | None) -> str:
    return f"torch {torch_version} ({'CUDA %d.%d' % cuda if cuda else 'CPU-only'})"


def check_build_matches(built: Mapping[str, Any], torch_version: str, cuda_version: str | None) -> str | None:
    """Whether an extension built as ``built`` can run under the given torch.

    Args:
        built: ``relground._C.build_info()``: ``torch_version`` (e.g. ``"2.14.1"``), ``cuda_compiled``
            (bool) and ``cuda_runtime_version`` (``CUDART_VERSION``, e.g. 13000, or None).
        torch_version: the running ``torch.__version__`` (e.g. ``"2.13.0+cpu"``).
        cuda_version: the running ``torch.version.cuda`` (e.g. ``"13.0"``; None for a CPU-only torch).

    Returns:
        None when it fits, else the message of the mismatch (both versions and the rebuild command).
        The rules: the torch major.minor must be equal (a patch release of the same minor is accepted, as
        the wheels' ``+ptXY`` label says); an extension with CUDA kernels needs a CUDA torch of the same
        CUDA major version; an extension without CUDA kernels runs under any build of that torch.
    """
    built_torch = built.get("torch_version")
    built_cuda = _cuda_major_minor(built.get("cuda_runtime_version")) if built.get("cuda_compiled") else None
    run_cuda = _cuda_major_minor(cuda_version)
    b, r = _parse_version(built_torch), _parse_version(torch_version)
    problems = []
    if b is None or r is None or b[:2] != r[:2]:
        problems.append("another torch version")
    if built.get("cuda_compiled"):
        if run_cuda is None:
            problems.append("CUDA kernels, but the running torch is a CPU-only build")
        elif built_cuda is not None and built_cuda[0] != run_cuda[0]:
            problems.append(f"CUDA {built_cuda[0]}.x kernels, but the running torch uses CUDA {cuda_version}")
    if not problems:
        return None
    return (
        f"relground._C was built against {_describe(built_torch, built_cuda)} but runs under "
        f"{_describe(torch_version, run_cuda)} ({'; '.join(problems)}). A C++ extension only works with the "
        f"torch it was compiled against.\n{REBUILD_HINT}"
    )


def _installed_build_label() -> str:
    """What the installed relground metadata says it was built for (its local version), for messages."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        installed = version("relground")
    except (ImportError, PackageNotFoundError, ValueError):  # pragma: no cover - no metadata
        return "an unknown torch (no relground metadata)"
    label = installed.partition("+")[2]
    match = re.fullmatch(r"pt(\d)(\d+)(cpu|cu(\d+))", label)
    if match is None:
        return f"an unknown torch (relground {installed} carries no +pt label)"
    cuda = "CPU-only" if match.group(3) == "cpu" else f"CUDA {match.group(4)[:-1]}.{match.group(4)[-1]}"
    return f"torch {match.group(1)}.{match.group(2)} ({cuda}), per the installed relground {installed}"


def _import_native() -> ModuleType:
    # import_module, not `from relground import _C`: an absent module then is a ModuleNotFoundError naming it.
    return importlib.import_module("relground._C")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def load_extension(
    importer: Callable[[], ModuleType] = _import_native,
    torch_version: str | None = None,
    cuda_version: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[ModuleType | None, str | None]:
    """Imports the extension and checks it against the running torch (arguments are for tests).

    Returns:
        ``(module, None)`` when it loads and fits; ``(None, reason)`` when it is not built, or when it does
        not fit and ``RELGROUND_ALLOW_FALLBACK=1`` (after a ``RuntimeWarning`` naming the reason).

    Raises:
        ImportError: the extension was built for another torch / CUDA, or fails to load for another reason
            than being absent (an undefined symbol: another torch's C++ ABI), and the fallback is not
            allowed. The message names both versions and the rebuild command.
    """
    if torch_version is None:  # the running torch (tests pass both versions)
        torch_version, cuda_version = torch.__version__, torch.version.cuda
    environ = os.environ if environ is None else environ
    cause: BaseException | None = None
    try:
        module = importer()
    except ModuleNotFoundError as exc:
        if exc.name == "relground._C":
            reason = f"relground._C is not built ({exc})"
            warnings.warn(
                f"{reason}; relground.ops falls back to the slow pure-PyTorch references. Build it with "
                "`pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`).",
                RuntimeWarning,
                stacklevel=3,
            )
            return None, reason
        message, cause = _load_failure_message(exc, torch_version, cuda_version), exc
    except ImportError as exc:  # the .so is there but does not load: almost always another torch's ABI
        message, cause = _load_failure_message(exc, torch_version, cuda_version), exc
    else:
        message = check_build_matches(dict(module.build_info()), str(torch_version), cuda_version)
        if message is None:
            return module, None
    if _flag(environ, FALLBACK_ENV):
        warnings.warn(
            f"{message}\n{FALLBACK_ENV}=1: relground.ops falls back to the slow pure-PyTorch references.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, message
    error = ImportError(f"{message}\nOr set {FALLBACK_ENV}=1 to run the slow pure-PyTorch references instead.")
    raise error from cause


def _load_failure_message(exc: ImportError, torch_version: str, cuda_version: str | None) -> str:
    abi = "undefined symbol" in str(exc)
    return (
        f"relground._C fails to load under torch {torch_version} "
        f"({'CUDA ' + cuda_version if cuda_version else 'CPU-only'}): {exc}\n"
        f"{'This is a C++ ABI mismatch: the ' if abi else 'The '}extension was built against "
        f"{_installed_build_label()}.\n{REBUILD_HINT}"
    )


_C, _IMPORT_ERROR = load_extension()
HAS_OPS = _C is not None


def build_info() -> dict:
    """How ``relground._C`` was built.

    Returns:
        dict with ``cuda_compiled`` (bool), ``cuda_arch_list`` (str, e.g. ``"9.0+PTX"``),
        ``torch_version`` (the torch the extension was compiled against), ``openmp`` and
        ``cuda_runtime_version``.

    Raises:
        RuntimeError: the extension is not built (or does not fit this torch and the fallback was allowed).
    """
    if _C is None:
        raise RuntimeError(f"relground._C is not available: {_IMPORT_ERROR}")
    return dict(_C.build_info())
